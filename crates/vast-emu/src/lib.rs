//! Test support: an emulator of Vast.ai's REST API, for testing code that rents Vast
//! instances (Ferry's Vast provider) without Vast. It answers the calls Vast's official
//! `vastai` package (1.9.1) makes to search offers and to create, show, start, stop, label and
//! destroy instances, well enough that those official functions work against it unchanged
//! (`tests/peers/test_vast_emu.py` drives it with them). Each instance "boots" by running its
//! on-start command as a local process, so a Ferry worker started that way is real.
//!
//! Sources of the wire format: the `vastai` package's `api/client.py` (URL building, the
//! Bearer header, which statuses it retries and how it reads `Retry-After`),
//! `api/instances.py`, `api/offers.py`, `sync/client.py`, `data/offer.py`,
//! `data/instance.py` and `data/query.py` (paths, bodies, answers and the fields read from
//! them), and docs.vast.ai's API reference (the error statuses of create instance, the
//! `actual_status` values). No code comes from them.
//!
//! # Routes
//!
//! Every route below needs the API key (`Authorization: Bearer KEY`, or `?api_key=KEY`):
//! a wrong or missing key answers 401 `{"success": false, "error": "invalid_api_key", "msg":
//! ...}`.
//!
//! | Route | Body / query | Answer |
//! |---|---|---|
//! | `POST /api/v0/bundles/` | a query: `{"gpu_ram": {"gte": 20000}, "rentable": {"eq": true}, "order": [["dph_total", "asc"]], "limit": 5, "type": "on-demand", ...}` | `{"offers": [offer, ...]}` |
//! | `PUT /api/v0/search/asks/` | `{"q": query, "select_cols": ["*"]}` | same |
//! | `PUT /api/v0/asks/{offer_id}/` | create: `image`, `label`, `env`, `onstart`, `args`/`args_str`, `runtype`, `disk`, `price`, `target_state` | `{"success": true, "new_contract": ID}`; 404/410 `{"success": false, "error": "no_such_ask", "msg": ..., "ask_id": ID}` |
//! | `GET /api/v1/instances/` | `select_filters`, `order_by`, `limit` (≤ 25), `after_token`, `select_cols` | `{"instances": [row, ...], "next_token": T\|null, "total_instances": N}` |
//! | `GET /api/v0/instances/` | | `{"instances": [row, ...]}` (legacy list) |
//! | `GET /api/v0/instances/{id}/` | (`owner=me`) | `{"instances": row}`, or `{"instances": null}` |
//! | `PUT /api/v0/instances/{id}/` | `{"state": "running"\|"stopped"}` and/or `{"label": L}` | `{"success": true}`; 404 `no_such_instance` |
//! | `PUT /api/v0/instances/` | `{"ids": [...], "state": ...}` | `{"success": true}` |
//! | `DELETE /api/v0/instances/{id}/` | | `{"success": true}`; 404 `no_such_instance` |
//! | `DELETE /api/v0/instances/` | `{"instance_ids": [...]}` | `{"success": true}` |
//!
//! Queries (`query`): `eq`, `neq`, `gt`, `gte`, `lt`, `lte`, `in`, `notin` on any column,
//! numbers, booleans (as 1/0), strings (exact) and `null`; `order` is a list of `[column,
//! "asc"|"desc"]`; a search returns at most 64 offers. A rented offer is left out of every
//! search until its instance is destroyed. `type: "bid"` shows each offer as interruptible
//! (`is_bid: true`, `dph_total` = its `min_bid`); a create with a `price` is a bid instance.
//!
//! Instance rows carry the columns `vastai.data.instance.Instance` names (`id`,
//! `machine_id`, `actual_status`, `intended_status`, `cur_state`, `status_msg`, `label`,
//! `image_uuid`, `public_ipaddr`, `ports`, `extra_env` as `[[key, value], ...]`, `start_date`
//! in Unix seconds, `dph_total`, `uptime_mins`, ...) and the machine's columns from the
//! offer (`gpu_name`, `num_gpus`, `gpu_ram`, ...). `ports` is Docker's shape:
//! `{"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}`.
//!
//! # Instances
//!
//! - **Create** rents the offer (it leaves searches) and records the instance (ids count up
//!   from [`FIRST_INSTANCE_ID`]) with `actual_status: "loading"`, or `"created"` and
//!   intended `stopped` with `target_state: "stopped"`.
//! - **Boot**: after the boot delay ([`EmuConfig::boot_delay`], 1 s by default) the on-start
//!   command runs as `sh -c CMD` in its own process group, in `<state dir>/instances/<id>/`,
//!   with stdout and stderr appended to `onstart.log` there; the instance turns `running`.
//!   The command is `onstart` (or `onstart_cmd`), else `args_str`, else `args` (each element
//!   shell-quoted); with none the instance runs without a process.
//! - **Environment**: the emulator's own environment, then what Vast sets in a container:
//!   `CONTAINER_ID=<id>`, `VAST_CONTAINERLABEL=C.<id>`, `PUBLIC_IPADDR=127.0.0.1` and, for
//!   each port the create's env exposes (`"-p 3000:3000": "1"`; `-p 8080/udp` for UDP),
//!   `VAST_TCP_PORT_3000=P` (`VAST_UDP_PORT_...`) where `P` is a free loopback port the
//!   emulator picked for this instance; then the create's env (keys starting with `-` are
//!   Docker flags, not variables). **The create's env is applied last, so it can override
//!   Vast's variables, `CONTAINER_ID` included.**
//! - **Ports, no NAT**: nothing forwards `P` to the container port. The process must listen
//!   on `P` itself: an on-start script uses `$VAST_TCP_PORT_3000` as its listening port
//!   (on 127.0.0.1), and clients reach it at `public_ipaddr:P` as they would on Vast. An
//!   instance keeps its ports from create to destroy, so a restart gets the same ones.
//! - **The process exits by itself**: the container stops with it (what is left of its
//!   process group is killed), `actual_status: "exited"`, `status_msg` says how.
//! - **Stop** (`state: "stopped"`): `intended_status` and `cur_state` turn `stopped` at once;
//!   the process group gets SIGTERM, SIGKILL after [`EmuConfig::stop_grace`], and only then
//!   does `actual_status` turn `stopped` (as on Vast, a caller polls for it). **Start** boots
//!   again (a new run: boot delay, same ports), after the previous run's processes are gone.
//! - **Destroy**: the instance is gone from the API at once and its offer is rentable again;
//!   its processes are stopped as for a stop (the ledger lists them until they are gone).
//!
//! # Knobs
//!
//! Set from Rust through [`Emulator::knobs`] ([`Knobs`]) or over HTTP under `/_emu/` (no API
//! key; the admin routes never fail on purpose). Each answers the knobs' new settings.
//!
//! | Knob | Rust | HTTP |
//! |---|---|---|
//! | Slow boot | [`Knobs::set_boot_delay`] | `POST /_emu/boot-delay {"ms": N}` |
//! | Boot failure: the next N boots never run the command and either stay `loading` for good ([`BootFailure::Hang`]) or go `exited` with an error `status_msg` ([`BootFailure::Exit`]) | [`Knobs::fail_boots`] | `POST /_emu/fail-boots {"count": N, "mode": "hang"\|"exit"}` |
//! | 429 for the next N API requests, or above R requests per second; `Retry-After` whole seconds (default 1) | [`Knobs::rate_limit_next`], [`Knobs::rate_limit_per_second`], [`Knobs::set_retry_after`] | `POST /_emu/rate-limit {"next": N, "per_second": R\|null, "retry_after_s": S}` |
//! | Outage for a duration: every API request answers 503 (an HTML gateway page), or has its connection reset ([`OutageMode`]) | [`Knobs::outage`] | `POST /_emu/outage {"ms": N, "mode": "503"\|"reset"}` (`ms: 0` ends it) |
//! | Offer stolen: the next create on an offer (or the next N creates) fails with 410 `no_such_ask` | [`Knobs::steal_offer`], [`Knobs::steal_next_creates`] | `POST /_emu/steal {"offer_id": ID}` / `{"next": N}` |
//! | Preemption: an instance is outbid, its processes stopped, `actual_status: "stopped"` with `intended_status: "running"` and [`OUTBID_MSG`] | [`Emulator::preempt`] | `POST /_emu/preempt/{id}` |
//! | All back to start-up values | [`Knobs::reset`] | `POST /_emu/knobs/reset` |
//!
//! `GET /_emu/knobs` shows the settings ([`KnobsSnapshot`]), `GET /_emu/ledger` the
//! [`Ledger`]: instances ever created and destroyed, those alive (status, pid, ports) and the
//! process groups still running, so a test can assert `created == destroyed` and no process
//! left at its end. `GET /_emu/health` answers `{"status": "ok"}`.
//!
//! # What it does not emulate
//!
//! Templates (a `template_hash_id` is recorded, not resolved), volumes, SSH and Jupyter
//! (`runtype` is recorded; no SSH port), billing and credit, bulk create (`POST
//! /api/v0/asks/bulk/`), reboot/recycle, logs and execute, `launch_instance`, machines and
//! hosts, teams, Serverless endpoints (Ferry's control plane is that). One API key, one
//! account. Offers never change price or reliability by themselves; a stop never waits for
//! the machine's GPU ("scheduling"). The exact wording of `msg` and `status_msg` texts is the
//! emulator's own.
//!
//! # Layout
//!
//! - `config`: [`EmuConfig`].
//! - `offers`: [`Offer`], the built-in catalogue (`catalogue.json`) and loading one from a
//!   file.
//! - `query`: Vast's filter language, for offers and instances.
//! - `cloud`: the offers and instances, and every invariant between them; `create`: what a
//!   create body asks for (command, env, ports); `ledger`: [`Ledger`].
//! - `boot`: one run of an instance (boot, process group, stop).
//! - `knobs`: [`Knobs`].
//! - `error`: [`ApiError`], Vast's error shapes.
//! - `api`: the routes; `server`: the accept loop and [`Emulator`].
//! - `main.rs`: the `ferry-vast-emu` binary.

mod api;
mod boot;
mod cloud;
mod config;
mod create;
mod error;
mod knobs;
mod ledger;
mod offers;
mod query;
mod server;

pub use cloud::{BOOT_FAILED_MSG, FIRST_INSTANCE_ID, OUTBID_MSG};
pub use config::{EmuConfig, DEFAULT_BOOT_DELAY, DEFAULT_STOP_GRACE};
pub use error::ApiError;
pub use knobs::{BootFailure, Knobs, KnobsSnapshot, OutageMode, DEFAULT_RETRY_AFTER};
pub use ledger::{Ledger, LedgerInstance, LedgerProcess};
pub use offers::{default_offers, load_offers, Offer, OfferError};
pub use server::Emulator;
