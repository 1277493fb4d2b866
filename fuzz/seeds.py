#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: small, real-looking inputs.

Signed bodies use the fixture key and signatures of crates/protocol/tests/fixtures (made with
pycryptodome); the TOML comes from docs/custom-workers.md; the streams are framed as the sim's
OpenAI, TGI and llama.cpp dialects frame them. Re-run after changing a wire shape:

    python3 fuzz/seeds.py

Needs only the standard library (and `openssl` for the extra key sizes, skipped if absent).
"""

import base64
import json
import pathlib
import re
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIX = json.loads((ROOT / "crates/protocol/tests/fixtures/fixtures.json").read_text())


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data).encode()
    (d / name).write_bytes(data)


vast = FIX["vast"][0]
ferry = FIX["ferry"][0]
claims = ferry["claims"]

AUTH = {
    "__request_id": "7304d39d-6a5e-45bf-b261-cc2607679685",
    "cost": 100.0,
    "endpoint": "my-endpoint",
    "reqnum": 0,
    "request_idx": 25,
    "signature": vast["signature"],
    "url": vast["url"],
}
AUTH_FERRY = {
    "__request_id": "0b6f3c1e-2f1d-4a8e-9d8f-5b7c3e1a2d4f",
    "cost": claims["cost"],
    "endpoint": claims["endpoint"],
    "reqnum": claims["reqnum"],
    "request_idx": claims["request_idx"],
    "signature": "c2ln",
    "url": claims["url"],
    "ferry_exp": claims["exp"],
    "ferry_sig": ferry["signature"],
}

# --- worker_request: the client's body to a worker route -------------------------------------
openai = {"model": "Qwen/Qwen2.5-0.5B", "prompt": "The capital of France is", "max_tokens": 32,
          "temperature": 0.7, "stream": True}
chat = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hi \u00e9\u4e2d"}],
        "max_completion_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}
tgi = {"inputs": "What is Deep Learning?", "parameters": {"max_new_tokens": 20, "do_sample": False}}
llama = {"prompt": "Once upon a time", "n_predict": 16, "stream": True}
comfy = {"input": {"request_id": "r-1", "modifier": "Text2Image",
                   "modifications": {"prompt": "a lighthouse at dusk", "width": 1024,
                                     "height": 768, "steps": 28, "seed": 1, "batch_size": 2}}}
workflow = {"input": {"workflow_json": {
    "3": {"class_type": "KSampler", "inputs": {"steps": "20", "seed": 5}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}}}
for name, payload, extra in [
    ("openai_completion", openai, {"session_id": None}),
    ("openai_chat_input_wrapped", {"input": chat}, {}),
    ("tgi_generate", tgi, {"session_id": "s-3f2a"}),
    ("llamacpp_completion", llama, {}),
    ("comfy_text2image", comfy, {}),
    ("comfy_workflow", workflow, {}),
]:
    write("worker_request", name + ".json", {"auth_data": AUTH, "payload": payload, **extra})
write("worker_request", "ferry_token.json", {"auth_data": AUTH_FERRY, "payload": openai})
# Byte-exact shapes: key order, spacing, escapes, a duplicate key, large and string numbers.
write("worker_request", "spacing_and_escapes.json",
      '{ "payload" : {"z": 1, "a": [1.50, "\\u00e9\\ud83d\\ude00"], "max_tokens": "16"} ,\n'
      '  "auth_data": ' + json.dumps(AUTH) + ', "payload_extra": null }')
write("worker_request", "duplicate_payload.json",
      '{"payload": 1, "payload": {"max_tokens": 1e308}, "auth_data": ' + json.dumps(AUTH) + '}')
write("worker_request", "missing_members.json", {"payload": [1, 2], "auth_data": {"url": "u"}})
write("worker_request", "bad_session.json", {"auth_data": AUTH, "payload": {}, "session_id": 5})

# --- auth_data: the ticket alone -------------------------------------------------------------
write("auth_data", "vast_signed.json", AUTH)
write("auth_data", "ferry_token.json", AUTH_FERRY)
for i, v in enumerate(FIX["vast"][1:4]):
    write("auth_data", f"vast_signed_{i}.json", {**AUTH, "url": v["url"], "signature": v["signature"]})
write("auth_data", "cost_as_text.json", {**AUTH, "cost": " 250 ", "reqnum": 3.0})
write("auth_data", "signature_with_newlines.json",
      {**AUTH, "signature": "\n".join(re.findall(".{1,76}", vast["signature"]))})
write("auth_data", "wrong_types.json", {"cost": [], "endpoint": 1, "reqnum": -1, "request_idx": 1.5,
                                         "signature": None, "ferry_exp": "soon"})

# --- pubkey_pem: the control plane's key -----------------------------------------------------
pem = FIX["public_pem"]
write("pubkey_pem", "spki.pem", pem)
write("pubkey_pem", "spki_crlf_padded.pem", "\n  " + pem.replace("\n", "\r\n") + "  \n")
der = base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))
write("pubkey_pem", "spki.der", der)
if shutil.which("openssl"):
    pkcs1 = subprocess.run(["openssl", "rsa", "-pubin", "-RSAPublicKey_out"], input=pem.encode(),
                           capture_output=True, check=True).stdout
    write("pubkey_pem", "pkcs1.pem", pkcs1)
    for bits in (1024, 4096):
        priv = subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True).stdout
        pub = subprocess.run(["openssl", "rsa", "-pubout"], input=priv, capture_output=True,
                             check=True).stdout
        write("pubkey_pem", f"spki_{bits}.pem", pub)

# --- reports: /worker_status/ and /delete_requests/ ------------------------------------------
status = {"id": 42, "mtoken": "tok", "version": "1.1.0", "loadtime": 12.5, "cur_load": 300.0,
          "rej_load": 0.0, "new_load": 100.0, "error_msg": "", "max_perf": 50.0, "cur_perf": 100.0,
          "cur_capacity": 0.0, "max_capacity": 0.0, "num_requests_working": 3,
          "num_requests_recieved": 9, "additional_disk_usage": 0.25, "disk_usage": 40.0,
          "working_request_idxs": [7, 8, 9], "url": "https://1.2.3.4:5"}
write("reports", "worker_status.json", status)
write("reports", "worker_status_2024.json",
      {"id": "12", "loadtime": None, "cur_load": 0, "error_msg": None, "max_perf": 3, "cur_perf": 1.5,
       "cur_capacity": 0, "max_capacity": 0, "num_requests_working": 2.0, "num_requests_recieved": 4,
       "additional_disk_usage": 0, "url": "http://x:1", "overloaded": False})
write("reports", "failure_beacon.json", {"id": 7, "mtoken": "", "version": "0", "error_msg": "boom", "url": ""})
write("reports", "delete_requests.json", {"worker_id": 42, "mtoken": "tok", "requests": [
    {"request_idx": 7, "success": True, "status": "Success", "entered_queue_at": 1764400000.25,
     "work_started_at": 1764400000.5, "work_completed_at": 1764400002.0},
    {"request_idx": 8, "success": True, "status": "Cancelled", "entered_queue_at": 1764400001.0,
     "work_started_at": 0.0, "work_completed_at": 0.0},
    {"request_idx": 9, "status": "Rejected"}, {"request_idx": 10.0, "success": False}]})
write("reports", "delete_requests_legacy.json",
      {"worker_id": "42", "mtoken": "tok", "request_idxs": [7, 8.0], "success": True})
write("reports", "request_record.json", {"request_idx": 7, "status": "SessionActive",
                                         "entered_queue_at": 1.5})

# --- route_body: /route/ request and answers -------------------------------------------------
write("route_body", "route_request_sdk.json",
      {"endpoint": "my-endpoint", "api_key": "k-3a9f", "cost": 100, "request_idx": 0, "replay_timeout": 60.0})
write("route_body", "route_request_retry.json", {"endpoint": "ep", "cost": 256.0, "request_idx": 25})
write("route_body", "route_ready.json", {**AUTH_FERRY, "signature": vast["signature"]})
write("route_body", "route_waiting.json",
      {"endpoint": "ep", "status": "total workers: 2, loading workers: 1, standby workers: 1, error workers: 0",
       "request_idx": 25, "__request_id": "7304d39d"})
write("route_body", "empty.json", " \n")

# --- worker_toml: the documented custom worker, and a settings-only file ---------------------
doc = (ROOT / "docs/custom-workers.md").read_text()
toml_doc = doc.split("```toml\n", 1)[1].split("```", 1)[0]
write("worker_toml", "custom_worker.toml", toml_doc)
write("worker_toml", "settings_only.toml",
      'model_server_url = "http://127.0.0.1:5001"\nmodel_health_endpoint = "/health"\n'
      'report_addr = "https://run.vast.ai,https://backup.example"\nunsecured = "true"\n')
write("worker_toml", "comfy_like.toml",
      'assume_loaded_perf = 12.5\n[[route]]\npath = "/generate/sync"\n'
      'workload = "input.modifications.width * input.modifications.height * 0.0001"\n'
      'parallel = false\n[benchmark]\npayloads = [{ input = { modifications = { width = 512, height = 512 } } }]\n')

# --- stream_relay: one byte n, n chunk sizes, then the body ----------------------------------
def sse(prefix, events):
    return "".join(f"{prefix}{json.dumps(e, separators=(',', ':'))}\n\n" for e in events)

chat_stream = sse("data: ", [
    {"id": "chatcmpl-sim-1", "object": "chat.completion.chunk", "created": 1764400000, "model": "sim",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]},
    *[{"id": "chatcmpl-sim-1", "object": "chat.completion.chunk", "created": 1764400000, "model": "sim",
       "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None,
                    "finish_reason": "length" if i == 2 else None}]} for i in range(3)],
    {"id": "chatcmpl-sim-1", "object": "chat.completion.chunk", "created": 1764400000, "model": "sim",
     "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}},
]) + "data: [DONE]\n\n"
tgi_stream = sse("data:", [
    {"index": i, "token": {"id": i, "text": f" t{i}", "logprob": 0.0, "special": False},
     "generated_text": " t0 t1" if i == 1 else None, "details": None, "top_tokens": None} for i in range(2)])
llama_stream = sse("data: ", [
    {"index": 0, "content": " hi", "tokens": [0], "stop": False, "id_slot": -1, "tokens_predicted": 1,
     "tokens_evaluated": 4},
    {"index": 0, "content": "", "stop": True, "tokens_predicted": 1, "timings": {"predicted_ms": 1.5}}])
ndjson = '{"n":1}\n\n  {"n":2}  \nnot json\n{"n":3,"s":"\\u00e9"}'
keepalive = 'event: message\ndata: {"a":"\u00e9"}\n\n: keepalive\n\ndata:{"b":2}\r\n\r\nevent: error\ndata: {"error":{"code":"upstream_timeout"}}\n\n'
for name, body, sizes in [
    ("openai_chat", chat_stream, [7, 64, 1, 200]),
    ("tgi", tgi_stream, [3, 3]),
    ("llamacpp", llama_stream, []),
    ("ndjson", ndjson, [1, 2, 3, 4, 5]),
    ("sse_keepalive_error", keepalive, [2, 9]),
]:
    write("stream_relay", name, bytes([len(sizes)] + sizes) + body.encode())

total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
print(f"wrote {sum(1 for f in CORPUS.rglob('*') if f.is_file())} seeds, {total} bytes")
