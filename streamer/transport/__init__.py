"""How frames cross processes: a shared-memory ring of pixel slots plus small notifications."""
