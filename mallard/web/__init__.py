"""What Mallard serves to browsers: the tracking script and the dashboard."""
