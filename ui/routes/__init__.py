"""The UI's pages, one `APIRouter` per family: service endpoints, sign-in, runs, pairs, training and bias.

Each route reaches the settings (and through them the database) with the `ui.settings.Settings` dependency.
"""
