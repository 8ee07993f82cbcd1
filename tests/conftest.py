import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


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
    app = build_app(config, model="tiny")
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()
