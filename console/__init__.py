"""The web console: DTR's repository page, Mirrors tab and New mirror, served with aiohttp.

Pages are rendered on the server (Jinja2, htmx for the live parts); every call to the services
goes through the Python SDK (`mirror.aio`) with the signed-in user's own API token, so the
console works against the embedded stack and a split deployment alike.
"""
