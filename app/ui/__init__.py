"""The browser UI: `page.py` builds the Gradio page (`build_ui`) from the header, the
conversation sidebar (`conversations.py`) and one module per tab (`chat.py` with
`chat_controls.py`, `models.py`, `convert.py`, `settings.py`); the view helpers
(`chat_view.py`, `library_view.py`, `expert_heatmap.py`, `labels.py`) turn the services'
data into what those components show."""
