"""The server's routes, one router per concern: search (search, embed, tokens), pages
(thumbnails, heatmaps), status (health, stats) and site (the page, its icon, the API docs)."""
