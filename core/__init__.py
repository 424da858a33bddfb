"""attnscope core: models, tokens, capture, analyses and figures. Never imports streamlit."""
