"""Style: a searchable multi-select of the style library (studio's own set and the --styles-dir folder),
with each chosen style's template shown and the library's problems said."""

from __future__ import annotations

import html


def styles_markdown(library, names) -> str:
    """The chosen styles' templates, in the order they apply, and any problem reading the styles folder."""
    lines = []
    for name in names or []:
        style = library.get(name)
        if style is not None:
            lines.append(f"- **{html.escape(style.name)}** ({style.source}): `{html.escape(style.prompt)}`"
                         + (f" · negative `{html.escape(style.negative_prompt)}`" if style.negative_prompt else ""))
    lines += [f"- ⚠️ {html.escape(p)}" for p in library.problems]
    lines += [f"- note: {html.escape(n)}" for n in library.notes]
    return "\n".join(lines) or "*No style chosen: the prompt is used as written.*"


def build(page) -> None:
    import gradio as gr

    from studio.ui.views import public
    from studio.ui.widgets import widget

    engine = page.studio.engine
    c = page.c
    c["styles"] = widget("styles", page.init["styles"], choices=engine.styles.names())
    shown = gr.Markdown(public(styles_markdown(engine.styles, page.init["styles"])), elem_id="style-info")
    reload = gr.Button("Read the styles folder again", size="sm", elem_id="reload-styles")

    def show(names):
        return public(styles_markdown(engine.styles, names))

    def reload_styles(names):
        """Style files added or edited while the app runs are read again."""
        engine.reload_styles()
        names = [n for n in names or [] if engine.styles.get(n) is not None]
        return gr.update(choices=engine.styles.names(), value=names), show(names)

    c["styles"].change(show, c["styles"], shown, api_visibility="private", show_progress="hidden")
    reload.click(reload_styles, c["styles"], [c["styles"], shown], api_visibility="private")
