"""Run the local LLM server: `python -m services.llm` (`ragctl up --llm` starts it).

llama.cpp's server, from the xllamacpp wheel, serves the packaged model over
the OpenAI chat-completions API (streaming, usage, /v1/models, /health) on
loopback; the generation service's vllm backend talks to it as it would to
vLLM. The model file is assembled and verified first if it is not there yet
(services/llm/models.py).

Why OMP_WAIT_POLICY=PASSIVE: llama.cpp's CPU threads otherwise spin while they
wait for each other, and on a machine whose cores are shared with other
processes (the other services, a CI runner's neighbours) a spinning thread that
lost its core stalls the rest: generation was seen to fall from 15 to about 1
token/s. It must be set before the library loads, hence before the import.
"""

import logging
import os
import signal
import time

from services.llm.models import ensure_model
from services.llm.settings import LLM_HOST, LlmSettings
from services.runtime.logs import configure_logging

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
log = logging.getLogger("services.llm")


def main() -> None:
    settings = LlmSettings()
    configure_logging("llm", settings.log_level, settings.log_content)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import xllamacpp

    started = time.monotonic()
    path = ensure_model(settings.spec, settings.models_dir)
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {settings.llm_model}  # a set of names: a str would be its letters
    params.hostnames = [LLM_HOST]
    params.port = settings.llm_port
    params.n_ctx = settings.llm_context_tokens
    params.n_parallel = 1  # one answer at a time: a CPU has no room for two
    params.endpoint_metrics = True  # Prometheus /metrics: tokens/s, queue, KV cache
    params.cpuparams.n_threads = settings.threads()
    params.cpuparams_batch.n_threads = settings.threads()
    # llama.cpp's threads inherit this mask, so a stop signal reaches sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    server = xllamacpp.Server(params)
    log.info(
        "local LLM serving",
        extra={
            "model": settings.llm_model,
            "address": server.listening_address,
            "threads": settings.threads(),
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    received = signal.sigwait(STOP_SIGNALS)
    log.info("local LLM stopping", extra={"signal": signal.Signals(received).name})
    # The server's native threads hold no state worth draining (an answer cut off
    # is retried by the caller's fallback), and joining them can hang: exit now.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
