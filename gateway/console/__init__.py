"""The operator's console at ``/console/``: one page over the admin API, behind the token."""
