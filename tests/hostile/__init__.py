"""The sandbox's hostile corpus: escape, forgery and denial-of-service cases run as root and unprivileged."""
