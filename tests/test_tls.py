"""TLS: a throwaway self-signed certificate, real TLS clients, and handshakes
that fail, stall or dribble without ever holding up anybody else.

The certificate is made at run time with the ``openssl`` command-line tool
(for ``localhost`` and 127.0.0.1); without it these tests are skipped.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from wire import (
    REPO,
    TIMEOUT,
    UNLIMITED,
    ServerProcess,
    WireClient,
    make_certificate,
    running_server,
    wait_until,
)

import servidor


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"), stem="servidor")


@pytest.fixture
def client_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    """What a client that trusts our certificate uses (``cliente.py --tls --tls-ca``)."""
    return ssl.create_default_context(cafile=certificate[0])


def tls_server(certificate: tuple[str, str], **options: object):
    """A TLS server; rate limits off unless ``options`` set them (every client is 127.0.0.1)."""
    for name, value in UNLIMITED.items():
        options.setdefault(name, value)
    return running_server(tls_context=servidor.make_tls_context(*certificate), **options)


def timed_session(address: tuple[str, int], context: ssl.SSLContext, nick: str) -> float:
    """Seconds a fresh TLS client takes to connect, register and get a PONG."""
    started = time.monotonic()
    with WireClient(address, tls=context) as client:
        assert client.request(f"REGISTRAR {nick}") == "OK"
        assert client.request("PING ok") == "PONG ok"
    return time.monotonic() - started


def read_raw_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends on a raw socket until it closes; TimeoutError if it doesn't."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"o servidor não fechou a conexão em {timeout:g} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


class BioClient:
    """A TLS client over a raw socket, through ``ssl.MemoryBIO``.

    Unlike ``SSLSocket`` it lets a test choose exactly which bytes go out
    and when: a hello dribbled byte by byte, or the client's Finished glued
    to its first request.
    """

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self._plain = b""
        self.closed = False

    def hello(self) -> bytes:
        """The ClientHello's bytes (nothing is sent)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def handshake(self, flush_last: bool = True) -> None:
        """Complete the handshake; ``flush_last=False`` keeps the client's last flight queued."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("EOF no handshake") from None
                self.incoming.write(data)
        if flush_last:
            self.sock.sendall(self.outgoing.read())

    def encrypt(self, line: str) -> bytes:
        """Whatever is queued (e.g. the Finished) followed by ``line`` as a record."""
        self.tls.write((line + "\n").encode("utf-8"))
        return self.outgoing.read()

    def _receive(self) -> bool:
        """One ``recv``: decrypt what came; False at EOF."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.incoming.write(data)
        try:
            while chunk := self.tls.read(65536):
                self._plain += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        return True

    def read_line(self, timeout: float = TIMEOUT) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._plain:
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nenhuma linha em {timeout:g} s")
            self.sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                self._receive()
        line, _, self._plain = self._plain.partition(b"\n")
        return line.decode("utf-8")

    def dribble(self, data: bytes, interval: float, timeout: float) -> float:
        """Send ``data`` a byte per ``interval`` until the server answers or closes.

        Handshake leftovers (TLS 1.3 session tickets) do not count as an
        answer. Returns the seconds it took the server to answer or close.
        """
        started = time.monotonic()
        sent = 0
        while not self.closed and not self._plain:
            assert time.monotonic() - started < timeout, "o servidor não reagiu a tempo"
            readable, _, _ = select.select([self.sock], [], [], interval)
            if readable:
                self._receive()
            elif sent < len(data):
                try:
                    self.sock.sendall(data[sent:sent + 1])
                except OSError:
                    break
                sent += 1
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------
# A working TLS chat


def test_tls_clients_register_list_and_relay(certificate, client_context):
    with tls_server(certificate, rate=0) as server, \
            WireClient(server.address, tls=client_context) as ana, \
            WireClient(server.address, tls=client_context) as bia:
        assert ana.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert ana.request("REGISTRAR ana") == "OK"
        assert ana.request("ASSINAR") == "OK"
        assert bia.request("REGISTRAR Bia") == "OK"
        assert ana.read_line() == "ENTROU Bia"
        bia.send_line("LISTAR")
        port_ana, port_bia = ana.local_address[1], bia.local_address[1]
        assert [bia.read_line() for _ in range(4)] == [
            "USUARIOS 2", f"USUARIO ana 127.0.0.1 {port_ana}",
            f"USUARIO Bia 127.0.0.1 {port_bia}", "END"]
        assert bia.request("ENVIAR ana oi, tudo bem? ção") == "OK"
        assert ana.read_line() == "MSG Bia ana oi, tudo bem? ção"
        # A burst large enough to span many TLS records both ways.
        texts = [f"mensagem {i} " + "x" * 500 for i in range(200)]
        ana.send("".join(f"ENVIAR bia {text}\n" for text in texts).encode())
        assert [ana.read_line() for _ in texts] == ["OK"] * len(texts)
        assert [bia.read_line() for _ in texts] == [f"MSG ana Bia {text}" for text in texts]
        assert bia.request("SAIR") == "OK"
        assert bia.expect_eof() == []
        assert ana.read_line() == "SAIU Bia"


def test_certificate_checked_by_ip_address_too(certificate, client_context):
    with tls_server(certificate) as server, \
            WireClient(server.address, tls=client_context, server_hostname="127.0.0.1") as ana:
        assert ana.request("PING ip") == "PONG ip"


def test_client_that_does_not_trust_the_certificate_fails(certificate, client_context):
    with tls_server(certificate) as server:
        system_store = ssl.create_default_context()  # does not know our self-signed cert
        with pytest.raises(ssl.SSLCertVerificationError):
            WireClient(server.address, tls=system_store)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname|match"):
            WireClient(server.address, tls=client_context, server_hostname="outra.maquina")
        assert timed_session(server.address, client_context, "ana") < 2.0
        wait_until(lambda: server.connection_count == 0)


def test_certificate_from_another_ca_is_refused(certificate, tmp_path):
    other_cert, _ = make_certificate(tmp_path, stem="outra")
    stranger = ssl.create_default_context(cafile=other_cert)
    with tls_server(certificate) as server, pytest.raises(ssl.SSLCertVerificationError):
        WireClient(server.address, tls=stranger)


# --------------------------------------------------------------------------
# Handshakes that fail or stall hold up nobody


def test_plain_tcp_client_on_the_tls_port_is_dropped(certificate, client_context):
    with tls_server(certificate) as server, WireClient(server.address) as plain:
        plain.send_line("REGISTRAR ana")
        read_raw_until_closed(plain.sock, timeout=3.0)  # maybe a TLS alert, then EOF
        assert timed_session(server.address, client_context, "ana") < 2.0
        wait_until(lambda: server.connection_count == 0)


def test_stalled_handshakes_do_not_block_accepting_or_others(certificate, client_context):
    with tls_server(certificate, register_timeout=5.0) as server:
        silent = [socket.create_connection(server.address, timeout=TIMEOUT) for _ in range(20)]
        halfway = BioClient(server.address, client_context)
        hello = halfway.hello()
        halfway.sock.sendall(hello[: len(hello) // 2])
        try:
            wait_until(lambda: server.connection_count == 21)
            assert timed_session(server.address, client_context, "ana") < 1.5
            assert timed_session(server.address, client_context, "bia") < 1.5
            assert server.connection_count >= 21  # the stalled ones are all still open
        finally:
            for sock in silent:
                sock.close()
            halfway.close()


def test_stalled_handshake_is_closed_by_the_tempo_bound(certificate, client_context):
    tempo = 0.3
    with tls_server(certificate, register_timeout=tempo) as server:
        started = time.monotonic()
        silent = socket.create_connection(server.address, timeout=TIMEOUT)
        halfway = BioClient(server.address, client_context)
        hello = halfway.hello()
        halfway.sock.sendall(hello[:10])
        try:
            assert read_raw_until_closed(silent, timeout=tempo + 3) == b""
            read_raw_until_closed(halfway.sock, timeout=tempo + 3)
            assert tempo * 0.9 <= time.monotonic() - started < tempo + 2.5
            wait_until(lambda: server.connection_count == 0)
        finally:
            silent.close()
            halfway.close()


def test_handshake_dribbled_byte_by_byte_is_closed_by_the_tempo_bound(certificate,
                                                                      client_context):
    """The bound covers the whole handshake, not each read of it."""
    tempo = 0.3
    with tls_server(certificate, register_timeout=tempo) as server:
        loris = BioClient(server.address, client_context)
        try:
            elapsed = loris.dribble(loris.hello(), interval=0.02, timeout=tempo + 3)
            assert elapsed < tempo + 2.0
            assert loris.closed and not loris._plain
        finally:
            loris.close()
        wait_until(lambda: server.connection_count == 0)


def test_record_dribbled_after_the_handshake_is_closed_by_the_tempo_bound(certificate,
                                                                         client_context):
    """A TLS record that never completes does not reset the TEMPO clock."""
    tempo = 0.3
    with tls_server(certificate, register_timeout=tempo) as server:
        loris = BioClient(server.address, client_context)
        try:
            loris.handshake()
            record = loris.encrypt("PING " + "x" * 300)
            started = time.monotonic()
            loris.dribble(record, interval=0.02, timeout=tempo + 3)
            line = loris.read_line(timeout=3.0)
            assert line is not None and line.startswith("ERRO TEMPO "), line
            assert loris.read_line(timeout=3.0) is None
            assert time.monotonic() - started < tempo + 2.0
        finally:
            loris.close()


def test_request_sent_together_with_the_clients_finished_is_answered(certificate,
                                                                    client_context):
    """Records that arrive in the same read as the handshake's end are not left unread."""
    with tls_server(certificate) as server:
        client = BioClient(server.address, client_context)
        try:
            client.handshake(flush_last=False)
            client.sock.sendall(client.encrypt("PING junto"))
            assert client.read_line(timeout=3.0) == "PONG junto"
        finally:
            client.close()


def test_lotado_over_tls_closes_without_a_line(certificate, client_context):
    with tls_server(certificate, max_clients=1) as server, \
            WireClient(server.address, tls=client_context) as ana:
        assert ana.request("PING ok") == "PONG ok"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            WireClient(server.address, tls=client_context)
        assert ana.request("PING ainda") == "PONG ainda"


def test_keepalive_on_tls_connections(certificate, client_context):
    with tls_server(certificate) as server, WireClient(server.address, tls=client_context) as ana:
        assert ana.request("PING ok") == "PONG ok"
        (connection,) = wait_until(server.connections)
        assert connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


# --------------------------------------------------------------------------
# The command line


def test_command_line_tls_server(certificate, client_context):
    cert, key = certificate
    with ServerProcess("--tls-cert", cert, "--tls-key", key) as server:
        assert "(TLS)" in server.listening_line
        with WireClient(server.address, tls=client_context) as ana:
            assert ana.request("REGISTRAR ana") == "OK"
            assert ana.request("PING cli") == "PONG cli"
            server.proc.send_signal(signal.SIGTERM)
            assert ana.expect_eof(timeout=3.0) == []
        assert server.proc.wait(3.0) == 0


def test_command_line_reports_a_bad_certificate(tmp_path):
    missing = str(tmp_path / "nao-existe.pem")
    result = subprocess.run(
        [sys.executable, str(REPO / "servidor.py"), "--host", "127.0.0.1", "--port", "0",
         "--tls-cert", missing, "--tls-key", missing],
        cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 2
    assert "certificado TLS" in result.stderr
