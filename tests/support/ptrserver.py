"""A small authoritative PTR server on loopback UDP, for the tests and the reverse-DNS benchmark.

Built on dnspython's message classes; not meant for production. It answers PTR queries from its records (with
their TTLs), NXDOMAIN for any other address, SERVFAIL for addresses in its ``servfail`` networks, and NOERROR
with no answer for other query types. ``delay_s`` holds every answer back (each query has its own thread, so
answers are delayed concurrently, like a slow upstream), and ``silent`` makes it read queries and never answer.
It counts the queries it gets per address.
"""

from __future__ import annotations

import ipaddress
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

LOOPBACK = "127.0.0.1"


def address_of(qname: dns.name.Name) -> str | None:
    """The IP address a reverse name (``...in-addr.arpa.`` or ``...ip6.arpa.``) stands for, compressed."""
    try:
        return ipaddress.ip_address(dns.reversename.to_address(qname)).compressed
    except (dns.exception.SyntaxError, ValueError):
        return None


class _Handler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.ptr.reply_to(data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True  # a delayed answer must not hold up stop()

    def __init__(self, ptr: PtrServer) -> None:
        self.ptr = ptr
        super().__init__((LOOPBACK, 0), _Handler)


class PtrServer:
    """``start()`` binds a free port on 127.0.0.1; ``nameserver`` is the ``RDNS_NAMESERVERS`` entry for it."""

    def __init__(self, *, delay_s: float = 0.0, silent: bool = False, servfail: Iterable[str] = ()) -> None:
        self.delay_s = delay_s
        self.silent = silent
        self._servfail = [ipaddress.ip_network(net) for net in servfail]
        self._records: dict[str, tuple[str, int]] = {}
        self._queries: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._udp: _UdpServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, address: str, name: str, ttl_s: int) -> None:
        """Serve ``name`` as the PTR record of ``address``, with ``ttl_s``."""
        with self._lock:
            self._records[ipaddress.ip_address(address).compressed] = (name, ttl_s)

    def queries(self, address: str | None = None) -> int:
        """Queries received so far for ``address``, or for all addresses."""
        with self._lock:
            if address is None:
                return sum(self._queries.values())
            return self._queries[ipaddress.ip_address(address).compressed]

    @property
    def port(self) -> int:
        if self._udp is None:
            raise RuntimeError("the PTR server is not started")
        return int(self._udp.server_address[1])

    @property
    def nameserver(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> PtrServer:
        self._udp = _UdpServer(self)
        self._thread = threading.Thread(target=self._udp.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ptr-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._udp is not None and self._thread is not None:
            self._udp.shutdown()
            self._thread.join()
            self._udp.server_close()
        self._udp = self._thread = None

    def reply_to(self, data: bytes) -> bytes | None:
        """The wire answer to one query, or ``None`` for none (silent, or not a DNS query)."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        address = address_of(question.name)
        with self._lock:
            self._queries[address or question.name.to_text()] += 1
            record = self._records.get(address) if address else None
        if self.silent:
            return None
        if self.delay_s:
            time.sleep(self.delay_s)  # this query's own thread: a slow upstream, not a stalled server
        return self._response(query, question, address, record).to_wire()

    def _response(self, query: dns.message.Message, question: dns.rrset.RRset, address: str | None,
                  record: tuple[str, int] | None) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if address is not None and any(ipaddress.ip_address(address) in net for net in self._servfail):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif record is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.PTR:
            name, ttl_s = record
            response.answer.append(dns.rrset.from_text(question.name, ttl_s, dns.rdataclass.IN,
                                                       dns.rdatatype.PTR, dns.name.from_text(name).to_text()))
        return response

    def __enter__(self) -> PtrServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
