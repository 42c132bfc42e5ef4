from mallard.cli import main

raise SystemExit(main())
