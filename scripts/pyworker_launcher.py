"""Starts Vast's official PyWorker (vastai package, unmodified) in front of a model server.

Used by the peer tests (an official worker registering with `ferry control`) and by the
side-by-side benchmark. Configured like Vast's OpenAI example worker; every knob comes from the
environment so callers need no code:

  PYW_MODEL_URL        model server base, scheme + host (default http://127.0.0.1)
  PYW_MODEL_PORT       model server port (required)
  MODEL_LOG            model log the worker tails for PYW_LOADED_LINE (required)
  PYW_ROUTES           comma-separated routes, worker path == model path (default /v1/completions)
  PYW_WORKLOAD_FIELD   payload field counted as workload (default max_tokens)
  PYW_LOADED_LINE      readiness line (default "Application startup complete.")
  PYW_HEALTH           model health path (optional)
  PYW_BENCH_PAYLOAD    benchmark payload JSON (default a 16-token completion)
  PYW_BENCH_RUNS, PYW_BENCH_CONCURRENCY   benchmark shape (default 3 x 10)
  PYW_HOST             address to bind (default 127.0.0.1; PyWorker alone binds every interface)
plus the worker's own Vast variables: WORKER_PORT, REPORT_ADDR, CONTAINER_ID, PUBLIC_IPADDR,
VAST_TCP_PORT_<WORKER_PORT>, MASTER_TOKEN, UNSECURED, WORKER_HTTP_PORT.
"""

import json
import os

from vastai import BenchmarkConfig, HandlerConfig, LogActionConfig, Worker, WorkerConfig


def main() -> None:
    field = os.environ.get("PYW_WORKLOAD_FIELD", "max_tokens")
    routes = [r for r in os.environ.get("PYW_ROUTES", "/v1/completions").split(",") if r]
    payload = json.loads(
        os.environ.get(
            "PYW_BENCH_PAYLOAD",
            '{"model": "m", "prompt": "hello", "max_tokens": 16}',
        )
    )

    def workload(p: dict) -> float:
        return float(p.get(field, 0) or 0)

    handlers = []
    for i, route in enumerate(routes):
        handlers.append(
            HandlerConfig(
                route=route,
                allow_parallel_requests=True,
                max_queue_time=600.0,
                workload_calculator=workload,
                benchmark_config=(
                    BenchmarkConfig(
                        dataset=[payload],
                        runs=int(os.environ.get("PYW_BENCH_RUNS", "3")),
                        concurrency=int(os.environ.get("PYW_BENCH_CONCURRENCY", "10")),
                    )
                    if i == 0
                    else None
                ),
            )
        )
    config = WorkerConfig(
        model_server_url=os.environ.get("PYW_MODEL_URL", "http://127.0.0.1"),
        model_server_port=int(os.environ["PYW_MODEL_PORT"]),
        model_log_file=os.environ["MODEL_LOG"],
        model_healthcheck_url=os.environ.get("PYW_HEALTH") or None,
        handlers=handlers,
        log_action_config=LogActionConfig(
            on_load=[os.environ.get("PYW_LOADED_LINE", "Application startup complete.")],
            on_error=["Traceback (most recent call last):"],
        ),
    )
    Worker(config).run(host=os.environ.get("PYW_HOST", "127.0.0.1"))


if __name__ == "__main__":
    main()
