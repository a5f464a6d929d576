"""Dashboard logic without Streamlit: figures, tables, selections and the map component.

Page files in ``pages/`` stay thin and call these; tests call them directly.
"""
