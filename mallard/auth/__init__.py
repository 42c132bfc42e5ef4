"""Who may read the data: accounts, sessions, API keys, shared links and lockout.

``policy`` decides (pure functions), ``store`` remembers (SQLite under
``data_dir/auth/``), ``passwords`` hashes (Argon2id), ``lockout`` slows down
guessing, and ``service`` ties them together for the HTTP layer.
"""
