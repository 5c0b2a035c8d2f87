"""The card templates (Jinja2 Markdown), installed as hfsae.model_cards; read them with hfsae.hub.card.template_path."""
