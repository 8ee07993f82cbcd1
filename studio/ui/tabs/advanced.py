"""Advanced: sampler, guidance, CLIP skip, precision, backend and device, chunk policy, and the compile cache."""

from __future__ import annotations

from studio.ui.tabs import input_image
from studio.ui.widgets import widget


def device_choices(studio, backend: str) -> list[str]:
    """The devices really present for ``backend`` (torch: cpu and each cuda:N; OpenVINO: the core's)."""
    return studio.engine.available_devices(backend)


def cache_markdown(studio, plan) -> str:
    """The compile cache: what is held, what the next run (``plan``) uses or compiles and why, the last compile."""
    info = studio.engine.compile_cache_info().get("openvino", {})
    cached = info.get("cached", [])
    lines = [f"**OpenVINO compiled variants held** ({len(cached)} of {info.get('capacity', '?')}):"]
    lines += [f"- `{sig}`" for sig in cached] or ["- none yet"]
    last = info.get("last_compile")
    if last:
        lines.append(f"**Last compile:** `{last['signature']}` in {last['seconds']:.1f} s ({last['reason']})")
    if plan is not None and plan.compile is not None:
        c = plan.compile
        lines.append(f"**Next run compiles** `{c.signature}`: {c.reason}" if c.will_compile
                     else f"**Next run uses** the cached `{c.signature}`")
    elif plan is not None:
        lines.append(f"**Next run:** {plan.backend.name} runs eagerly; nothing is compiled")
    return "\n".join(lines)


def build(page) -> None:
    import gradio as gr

    from studio.ui.views import handler

    init, c, studio = page.init, page.c, page.studio
    c["sampler"] = widget("sampler", init["sampler"])
    c["cfg"] = widget("cfg", init["cfg"])
    c["clip_skip"] = widget("clip_skip", init["clip_skip"])
    with gr.Row():
        for part in ("text", "unet", "vae"):
            c[f"{part}_dtype"] = widget(f"{part}_dtype", init[f"{part}_dtype"], min_width=100)
    c["backend"] = widget("backend", init["backend"])
    c["device"] = widget("device", init["device"], choices=device_choices(studio, init["backend"]))
    c["ov_mode"] = widget("ov_mode", init["ov_mode"])
    c["text_encoder"] = widget("text_encoder", init["text_encoder"])
    c["ov_weights"] = widget("ov_weights", init["ov_weights"])
    c["compile"] = widget("compile", init["compile"])
    c["chunk_policy"] = widget("chunk_policy", init["chunk_policy"])
    gr.Markdown("**Input image** (vary, upscale, inpaint, outpaint)")
    input_image.build_settings(page)
    with gr.Group(elem_id="compile-cache"):
        cache = gr.Markdown("", elem_id="compile-cache-info")
        drop = gr.Button("Drop the compile cache", size="sm", elem_id="drop-cache")
    page.parts["cache"] = cache

    def devices_for(backend, device):
        """The device list of the chosen backend; the device kept when it is there, else the first one."""
        names = device_choices(studio, backend)
        return gr.update(choices=names, value=device if device in names else names[0])

    @handler(lambda e: (e, gr.update()))
    def drop_cache():
        """Release the compiled variants in memory (the blobs on disk stay, so a recompile is quicker)."""
        dropped = studio.engine.drop_compile_cache().get("openvino", {}).get("dropped", [])
        return "", (f"Dropped {len(dropped)} compiled variant(s); the next OpenVINO run compiles again "
                    "(from the blobs on disk).")

    c["backend"].change(devices_for, [c["backend"], c["device"]], c["device"], api_visibility="private",
                        show_progress="hidden")
    drop.click(drop_cache, None, [page.parts["error"], cache], api_visibility="private")
