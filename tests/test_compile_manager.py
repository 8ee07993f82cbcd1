"""The recompile manager's bookkeeping: predictions, reasons, hits, LRU eviction order."""

from studio.backends.compile_manager import CompileManager, Signature


def sig(w=64, h=64, chunks=1, mode="accuracy", batch=2):
    return Signature(device="CPU", mode=mode, batch=batch, width=w, height=h, chunks=chunks)


def compile_fn(s):
    return f"compiled {s}"


def test_reasons_and_hits():
    m = CompileManager(capacity=3)
    assert m.predict(sig()).reason == "first load" and m.predict(sig()).will_compile
    _, events = m.activate(sig(), compile_fn)
    assert [e["kind"] for e in events] == ["compile"] and events[0]["reason"] == "first load"
    p = m.predict(sig(chunks=2))
    assert p.will_compile and p.reason == "prompt crossed 75 tokens: chunks 1→2"
    _, events = m.activate(sig(chunks=2), compile_fn)
    assert events[0]["reason"] == "prompt crossed 75 tokens: chunks 1→2"
    assert m.predict(sig(w=128, chunks=2)).reason == "resolution 64×64→128×64"
    assert m.predict(sig(chunks=2, mode="performance")).reason == "mode accuracy→performance"
    assert m.predict(sig(chunks=2, batch=1)).reason == "batch 2→1"
    assert not m.predict(sig()).will_compile and m.predict(sig()).reason == "cached"
    value, events = m.activate(sig(), compile_fn)
    assert value == f"compiled {sig()}" and [e["kind"] for e in events] == ["hit"]
    assert m.counters == {"compiles": 2, "hits": 1, "evictions": 0}


def test_lru_eviction_order():
    m = CompileManager(capacity=2)
    a, b, c = sig(chunks=1), sig(chunks=2), sig(chunks=3)
    m.activate(a, compile_fn)
    m.activate(b, compile_fn)
    m.activate(a, compile_fn)  # a is now the most recent: b goes first
    assert m.predict(c).evicts == str(b)
    _, events = m.activate(c, compile_fn)
    assert [(e["kind"], e["signature"]) for e in events] == [("compile", str(c)), ("evict", str(b))]
    assert m.cached == [str(a), str(c)]
    p = m.predict(b)
    assert p.will_compile and p.reason.startswith("evicted earlier (LRU holds 2)")
    m.activate(b, compile_fn)
    assert m.cached == [str(c), str(b)]
    assert m.counters == {"compiles": 4, "hits": 1, "evictions": 2}
    events = m.resize(1)
    assert [e["signature"] for e in events] == [str(c)] and m.cached == [str(b)]


def test_another_model_with_the_same_shapes_compiles():
    m = CompileManager(capacity=3)
    a = Signature(device="CPU", mode="accuracy", batch=2, width=64, height=64, chunks=1, model="aaaaaaaaaa")
    b = Signature(device="CPU", mode="accuracy", batch=2, width=64, height=64, chunks=1, model="bbbbbbbbbb")
    m.activate(a, lambda s: "A")
    plan = m.predict(b)
    assert plan.will_compile and plan.reason == "model aaaaaaaaaa→bbbbbbbbbb" and str(b).startswith("bbbbbbbbbb:CPU")
    compiled, events = m.activate(b, lambda s: "B")
    assert compiled == "B" and events[0]["kind"] == "compile"
    assert m.activate(a, lambda s: "again")[0] == "A"  # the first model's variant is still cached


def test_predict_changes_nothing_and_foresees_the_eviction():
    m = CompileManager(capacity=2)
    a, b, c = sig(chunks=1), sig(chunks=2), sig(chunks=3)
    for s in (a, b):
        m.activate(s, compile_fn)
    before = (m.cached, dict(m.counters), m.capacity, m.info())
    p = m.predict(c)
    assert p.will_compile and p.evicts == str(a)
    assert m.predict(b).reason == "cached: the variant the last run used" and m.predict(a).reason == "cached"
    assert (m.cached, dict(m.counters), m.capacity, m.info()) == before
    events = m.activate(c, compile_fn)[1]
    assert [e["signature"] for e in events if e["kind"] == "evict"] == [str(a)]
    assert m.cached == [str(b), str(c)]


def test_drop_empties_the_lru_and_the_next_prediction_says_why():
    m = CompileManager(capacity=3)
    a, b = sig(chunks=1), sig(chunks=2)
    m.activate(a, compile_fn)
    m.activate(b, compile_fn)
    info = m.info()
    assert info["cached"] == [str(a), str(b)] and info["in_use"] == str(b) and info["capacity"] == 3
    assert info["last_compile"]["signature"] == str(b) and info["last_compile"]["seconds"] >= 0
    assert m.drop() == [str(a), str(b)]
    assert m.cached == [] and m.info()["in_use"] is None
    p = m.predict(b)
    assert p.will_compile and p.reason.startswith("the compile cache was dropped")
    _, events = m.activate(b, compile_fn)
    assert [e["kind"] for e in events] == ["compile"] and events[0]["reason"].startswith("the compile cache was dropped")
    assert not m.predict(b).will_compile


def test_padding_is_said_as_padding_not_as_a_crossed_boundary():
    m = CompileManager(capacity=3)
    m.activate(sig(chunks=1), compile_fn)
    padded = Signature(device="CPU", mode="accuracy", batch=2, width=64, height=64, chunks=2, prompt_chunks=1)
    assert m.predict(padded).reason == "chunk policy pads the prompt (1 chunk) to 2 chunks: chunks 1→2"
    m.activate(padded, compile_fn)
    assert padded == sig(chunks=2) and not m.predict(sig(chunks=2)).will_compile  # not part of the key
    m2 = CompileManager(capacity=3)
    m2.activate(sig(chunks=2), compile_fn)
    assert m2.predict(sig(chunks=1)).reason == "prompt back within 75 tokens: chunks 2→1"


def test_the_task_is_part_of_the_key_and_said_as_mask_mode_and_input_size():
    m = CompileManager(capacity=4)
    text = sig()
    inpaint = Signature(device="CPU", mode="accuracy", batch=2, width=64, height=64, chunks=1,
                        task="inpaint (latent blending)")
    assert str(text) == "CPU:accuracy:b2:64x64:77tok" and str(inpaint) == "CPU:accuracy:b2:64x64:77tok:inpaint"
    assert inpaint != text and not text.image_input and inpaint.image_input
    m.activate(text, compile_fn)
    p = m.predict(inpaint)
    assert p.will_compile and p.reason == "mask mode text to image→inpaint (latent blending)"
    m.activate(inpaint, compile_fn)
    wider = Signature(device="CPU", mode="accuracy", batch=2, width=96, height=64, chunks=1,
                      task="inpaint (latent blending)")
    assert m.predict(wider).reason == "input size 64×64→96×64"
    vary = Signature(device="CPU", mode="accuracy", batch=2, width=96, height=64, chunks=1, task="image to image")
    assert m.predict(vary).reason == "mask mode inpaint (latent blending)→image to image, input size 64×64→96×64"
    m.activate(vary, compile_fn)
    assert m.predict(sig(w=72)).reason == "mask mode image to image→text to image, resolution 96×64→72×64"
    assert not m.predict(text).will_compile and m.predict(inpaint).reason == "cached"
    try:
        Signature(device="CPU", mode="accuracy", batch=2, width=64, height=64, chunks=1, task="img2img")
    except ValueError as exc:
        assert "unknown compile task" in str(exc)
    else:
        raise AssertionError("an unknown task was accepted")
