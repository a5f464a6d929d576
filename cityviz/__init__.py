"""cityviz: what does a city-recognition network look at?

The library shared by the precompute CLI and the Streamlit dashboard. It never imports Streamlit.
"""

__version__ = "0.1.0"
