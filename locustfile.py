"""Locust load test of a running kefu: visitors and agents, HTTP and WebSocket.

    .venv/bin/locust -f locustfile.py --headless -u 200 -r 20 --run-time 60s \
        --host http://127.0.0.1:8090 --csv var/locust

Two user classes (weights 10:1):

* VisitorUser: enters a shop through GET /open/im (a new visitor, own
  cookie jar), opens the WebSocket it was given, authenticates (op 7), then
  in turns: posts a message through POST /open/push, heartbeats (op 2),
  syncs history (op 14), acknowledges what it read (op 16).
* AgentUser: logs in (POST /open/login), lists conversations
  (/open/finduserlist), opens one (/open/com, which also gives it a key),
  keeps a WebSocket on its shop's channel and replies through /open/push.

WebSocket events are reported to Locust as requests of type "WS", so the
UI, the console table and --csv show their counts and latencies next to
the HTTP routes:

    WS connect     TCP + WebSocket upgrade
    WS auth        op 7 -> op 8 (the room is subscribed when op 8 arrives)
    WS heartbeat   op 2 -> op 3
    WS sync        op 14 -> last op 15 (ended by a heartbeat right behind it)
    WS ack         op 16 -> op 17
    WS deliver     a message this test posted: from the POST being sent to
                   the op-5 frame arriving on a connection (sender's own
                   echo and the agent's copy), one host clock

Settings (environment): KEFU_SHOP (default 8000), KEFU_PASSWORD (default:
read from KEFU_DATA_DIR/demo-credentials.txt, KEFU_DATA_DIR defaulting to
./var as `scripts/run` uses).  The API limits new visitors and messages
per IP by default; for a load test start kefu with higher limits, e.g.

    KEFU_RATE_VISITORS_PER_IP=100000 KEFU_RATE_MESSAGES_PER_IP=100000 \
    KEFU_RATE_MESSAGES_PER_SENDER=1000 .venv/bin/python -m kefu run

otherwise expect 429 answers (counted as failures).
"""
from __future__ import annotations

import itertools
import os
import random
import sys
import time
from pathlib import Path

import gevent
import orjson
import websocket
from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kefu import tlv  # noqa: E402
from kefu.protocol import Op  # noqa: E402

SHOP = os.environ.get("KEFU_SHOP", "8000")
MARK = "locust "                     # message text prefix: "locust <send time>"


def shop_password() -> str:
    if os.environ.get("KEFU_PASSWORD"):
        return os.environ["KEFU_PASSWORD"]
    path = Path(os.environ.get("KEFU_DATA_DIR", "var")) / "demo-credentials.txt"
    try:
        return path.read_text().split()[1]
    except (OSError, IndexError):
        return ""


def fire(name: str, started: float, *, length: int = 0, exc: Exception | None = None) -> None:
    events.request.fire(request_type="WS", name=name, response_time=(time.time() - started) * 1000,
                        response_length=length, exception=exc, context={})


class Socket:
    """One comet WebSocket: a reader greenlet matches replies by sequence number."""

    def __init__(self, url: str) -> None:
        started = time.time()
        try:
            self.ws = websocket.create_connection(url, timeout=10, enable_multithread=True)
        except Exception as exc:
            fire("connect", started, exc=exc)
            raise
        fire("connect", started)
        self.ws.settimeout(None)          # the reader idles between pushes; the server's heartbeat timeout rules
        self.seq = itertools.count(1)
        self.waiting: dict[int, tuple[str, float, list]] = {}
        self.pages: dict[int, list] = {}  # sync seq -> op-15 bodies so far
        self.last_id = 0
        self.closed = False
        self.reader = gevent.spawn(self._read)

    def send(self, op: int, body: bytes = b"", name: str | None = None) -> int:
        seq = next(self.seq)
        if name:
            self.waiting[seq] = (name, time.time(), [])
        self.ws.send_binary(tlv.encode(op, seq, body))
        return seq

    def _read(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                if not isinstance(data, bytes) or not data:
                    if not data:
                        break
                    continue
                op, seq, body = tlv.decode(data)
                frames = tlv.StreamDecoder(1 << 24).feed(body) if op == Op.RAW else [(op, seq, body)]
                for f in frames:
                    self._frame(*f)
        except Exception:  # noqa: BLE001 - the connection is gone; users reconnect on their next task
            pass
        finally:
            self.closed = True
            for name, started, _ in self.waiting.values():
                fire(name, started, exc=ConnectionError("connection closed"))
            self.waiting.clear()

    def _frame(self, op: int, seq: int, body: bytes) -> None:
        if op == Op.MESSAGE:
            self._message(body)
            return
        if op == Op.SYNC_REPLY:
            if seq in self.pages:
                self.pages[seq].append(body)
            return
        w = self.waiting.pop(seq, None) if seq else None
        if w is None:
            return
        name, started, collected = w
        if name == "sync":
            self.pages.pop(seq - 1, None)
        if op == Op.DISCONNECT:
            fire(name, started, exc=ConnectionError(body.decode(errors="replace")))
            return
        fire(name, started, length=len(body) + sum(len(b) for b in collected))
        if name == "auth" and op != Op.AUTH_REPLY:
            fire("auth", started, exc=ValueError(f"op {op} instead of op 8"))

    def _message(self, body: bytes) -> None:
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(msg.get("id"), int):
            self.last_id = max(self.last_id, msg["id"])
        text = msg.get("msg")
        if isinstance(text, str) and text.startswith(MARK):
            try:
                sent = float(text[len(MARK):].split()[0])
            except (ValueError, IndexError):
                return
            events.request.fire(request_type="WS", name="deliver", response_time=(time.time() - sent) * 1000,
                                response_length=len(body), exception=None, context={})

    def auth(self, key: str, **extra) -> None:
        seq = self.send(Op.AUTH, orjson.dumps({"key": key, "accepts": [5, 9], **extra}), "auth")
        deadline = time.time() + 10
        while seq in self.waiting and time.time() < deadline and not self.closed:
            gevent.sleep(0.005)
        if self.closed:
            raise ConnectionError("refused")

    def heartbeat(self) -> None:
        self.send(Op.HEARTBEAT, b"", "heartbeat")

    def sync(self, after: int | None = None) -> None:
        """op 14 and a heartbeat right behind it: the op 3 marks the sync's end."""
        seq = next(self.seq)
        end = next(self.seq)                  # = seq + 1: _frame finds the pages by it
        collected: list = []
        self.pages[seq] = collected
        self.waiting[end] = ("sync", time.time(), collected)
        body = b"" if after is None else b"%d" % after
        self.ws.send_binary(tlv.encode(Op.SYNC, seq, body))
        self.ws.send_binary(tlv.encode(Op.HEARTBEAT, end, b""))

    def ack(self, msg_id: int) -> None:
        self.send(Op.ACK, b"%d" % msg_id, "ack")

    def close(self) -> None:
        self.closed = True
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self.reader.kill(block=False)


class VisitorUser(HttpUser):
    """A shop's visitor: the chat page's traffic."""

    weight = 10
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.sock = None
        with self.client.get("/open/im", params={"shop_id": SHOP, "format": "json"},
                             name="/open/im", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                self.params = None
                return
            self.params = r.json()
        self.connect()

    def connect(self) -> None:
        try:
            self.sock = Socket(self.params["suburl"])
            self.sock.auth(self.params["key"], mid=self.params["mid"], room_id=self.params["room_id"])
            self.sock.sync()
        except Exception:  # noqa: BLE001 - reported as a failed WS event already
            self.sock = None

    def on_stop(self) -> None:
        if self.sock:
            self.sock.close()

    def _ready(self) -> bool:
        if self.params is None:
            return False
        if self.sock is None or self.sock.closed:
            self.connect()
        return self.sock is not None

    @task(4)
    def post(self) -> None:
        if not self._ready():
            return
        p = self.params
        with self.client.post("/open/push", params={"mid": p["mid"], "shop_id": p["shop_id"]},
                              data={"type": "text", "room_id": p["room_id"], "key": p["key"],
                                    "msg": f"{MARK}{time.time():.6f} from a visitor",
                                    "client_msg_id": f"l{random.getrandbits(48)}"},
                              name="/open/push", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(2)
    def heartbeat(self) -> None:
        if self._ready():
            self.sock.heartbeat()

    @task(1)
    def sync(self) -> None:
        if self._ready():
            self.sock.sync()

    @task(1)
    def ack(self) -> None:
        if self._ready() and self.sock.last_id:
            self.sock.ack(self.sock.last_id)


class AgentUser(HttpUser):
    """A shop's agent: the console's traffic (login, list, open, reply)."""

    weight = 1
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.sock = None
        self.logged_in = False
        self.rooms: list[dict] = []
        with self.client.post("/open/login", data={"shop_id": SHOP, "password": shop_password()},
                              name="/open/login", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]} (set KEFU_PASSWORD or KEFU_DATA_DIR)")
                return
        self.logged_in = True

    def on_stop(self) -> None:
        if self.sock:
            self.sock.close()

    @task(3)
    def conversations(self) -> None:
        if not self.logged_in:
            return
        with self.client.post("/open/finduserlist", params={"shop_id": SHOP}, name="/open/finduserlist",
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            self.rooms = [c for c in r.json().get("data", []) if isinstance(c.get("user"), dict)]

    @task(2)
    def reply(self) -> None:
        if not self.logged_in or not self.rooms:
            return
        conv = random.choice(self.rooms[:20])
        mid = conv["user"].get("mid")
        if not mid:
            return
        with self.client.get("/open/com", params={"shop_id": SHOP, "mid": mid, "format": "json"},
                             name="/open/com", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            p = r.json()
        if self.sock is None or self.sock.closed:
            try:
                self.sock = Socket(p["suburl"])
                self.sock.auth(p["key"], mid=p["mid"], room_id=p["room_id"])
            except Exception:  # noqa: BLE001 - reported as a failed WS event
                self.sock = None
        with self.client.post("/open/push", params={"mid": p["mid"], "shop_id": SHOP},
                              data={"type": "text", "room_id": p["room_id"], "key": p["key"],
                                    "msg": f"{MARK}{time.time():.6f} from an agent",
                                    "client_msg_id": f"a{random.getrandbits(48)}"},
                              name="/open/push (agent)", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def heartbeat(self) -> None:
        if self.sock is not None and not self.sock.closed:
            self.sock.heartbeat()
