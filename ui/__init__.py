"""`prefsmith ui`: a web application to browse, review and explain what a database holds."""
