import os
from pathlib import Path
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes share the cores: OpenMP threads that spin while they wait would take the other
    # process's time (bench/render.py measured 5x slower with spinning workers).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache (tokenizer files, built-in models, hashes) for the whole session."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["STUDIO_CACHE_DIR"] = str(path)  # for CLI runs in this process and in subprocesses
    return path


@pytest.fixture(scope="session")
def config(cache_dir, tmp_path_factory):
    from studio.settings import AppConfig

    return AppConfig(cache_dir=cache_dir, output_dir=tmp_path_factory.mktemp("outputs"),
                     models_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def engine(config):
    from studio.engine.engine import Engine
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    return Engine(config)


@pytest.fixture
def tiny_request():
    from studio.settings import build_request

    def make(**overrides):
        values = dict(prompt="a photograph of an astronaut riding a horse", seed=1234, steps=4, width=64,
                      height=64, sampler="euler", model="tiny")
        values.update(overrides)
        return build_request(**values)

    return make


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(config):
    """The real app on a free 127.0.0.1 port, for the module's tests; its URL."""
    from studio.runtime import prepare_process, quiet_libraries
    from studio.ui.app import build_app

    prepare_process()
    quiet_libraries()
    from studio.ui.server import launch

    app = build_app(config, model="tiny")
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def build_tiny_lm(folder, safe: bool = True):
    """A folder with a random 2-layer GPT-2 and its byte-level BPE tokenizer (weights as safetensors,
    or with ``safe=False`` as a pytorch_model.bin pickle)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from studio.prompts.wordbank import WORDS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # A small vocabulary: many words take several tokens, which the prefix tree must handle.
    bpe.train_from_iterator([", ".join(WORDS[i:i + 20]) for i in range(0, len(WORDS), 20)], trainer)
    lm_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    lm_tok.save_pretrained(folder)
    eot = lm_tok.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(lm_tok), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                        bos_token_id=eot, eos_token_id=eot)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    if not safe:  # transformers 5 writes only safetensors: make the old pickle form by hand
        torch.save(model.state_dict(), str(Path(folder) / "pytorch_model.bin"))
        (Path(folder) / "model.safetensors").unlink()
    return folder


def build_tiny_inpaint(folder):
    """A diffusers folder holding a tiny SD1 inpainting checkpoint: the tiny model with a 9-channel UNet
    (latents + mask + the masked image's latents), seeded, saved as safetensors."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from studio.models import demo
    from studio.settings import AppConfig

    cache = AppConfig.from_env().cache_dir
    base = demo._build_tiny(cache)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, scheduler=base.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint(config):
    """The name of a tiny 9-channel inpainting model in the session's models folder."""
    build_tiny_inpaint(config.models_dir / "tiny-inpaint")
    return "tiny-inpaint"


def make_picture(width: int, height: int, seed: int = 0):
    """A smooth, seeded RGB test picture (gradients and a disc), so resizes and encodes have structure."""
    import numpy as np
    from PIL import Image

    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / max(width, 1) * 6.28 + rs.rand() * 6)
    g = 127 + 120 * np.cos(y / max(height, 1) * 6.28 + rs.rand() * 6)
    b = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2, 220.0, 40.0)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


# The files that take minutes (exports, compiles, worker processes), longest first. Under launch.py --test two
# processes take files in collection order; starting these first keeps one process from running a long file
# alone at the end while the other has nothing left.
SLOW_FIRST = ("test_render.py", "test_torch_compile.py", "test_openvino.py", "test_openvino_modes.py",
              "test_running.py", "test_openvino_image.py", "test_faults.py", "test_browser.py", "test_speed_paths.py",
              "test_app.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: file order within a rank


@pytest.fixture
def say(request):
    """Report a measured line (a precision that ran, a drift, a compile time) in the run's summary. Printing
    from a test is lost under launch.py --test's two processes; a report's user_properties come back."""
    return lambda line: request.node.user_properties.append(("said", line))


def pytest_terminal_summary(terminalreporter):
    said = [value for reports in terminalreporter.stats.values() for report in reports
            if getattr(report, "when", None) == "call"
            for name, value in getattr(report, "user_properties", ()) if name == "said"]
    if said:
        terminalreporter.section("what the tests measured")
        for line in said:
            terminalreporter.write_line(line)
