"""Long-term, location-aware history of what each carrier delivered where."""
