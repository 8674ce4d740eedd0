#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time and keeps their order,
in the manner of toxiproxy's latency toxic (which Debian does not carry).

Listens on --listen and forwards each connection to --target. What each side
sends reaches the other --delay-ms later (per direction; a round trip through
the proxy gains twice that), or the delay of the connection's source address
when --source-delay names it. Bytes are read as they come, stamped with the
time they are due, and written in order once due, so a steady stream keeps
its rate and only gains latency.

    delay_proxy.py --listen 0.0.0.0:7101 --target 10.0.0.12:7100 \\
        --delay-ms 0 --source-delay 10.0.0.13=10 --source-delay 10.0.0.15=30

bench/zones runs one inside each node's network namespace (through nsenter),
with iptables sending peers' connections from other zones through it.
"""

import argparse
import asyncio
import collections
import signal
import sys
import time


async def pipe(reader, writer, delay_s):
    """Copies `reader` to `writer`, each chunk `delay_s` late, in order."""
    due = collections.deque()
    arrived = asyncio.Event()
    done = False

    async def read():
        nonlocal done
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                due.append((time.monotonic() + delay_s, chunk))
                arrived.set()
        except (ConnectionError, OSError):
            pass
        finally:
            done = True
            arrived.set()

    async def write():
        try:
            while True:
                if not due:
                    if done:
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                at, chunk = due[0]
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                due.popleft()
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(read(), write())


async def serve(args):
    host, port = args.listen.rsplit(":", 1)
    target_host, target_port = args.target.rsplit(":", 1)
    delays = {}
    for item in args.source_delay:
        source, ms = item.split("=", 1)
        delays[source] = float(ms) / 1000.0

    async def connection(client_reader, client_writer):
        source = client_writer.get_extra_info("peername")[0]
        delay = delays.get(source, args.delay_ms / 1000.0)
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(pipe(client_reader, server_writer, delay),
                                 pipe(server_reader, client_writer, delay))
        except asyncio.CancelledError:
            pass  # the proxy stops
        finally:
            for w in (server_writer, client_writer):
                w.close()

    server = await asyncio.start_server(connection, host, int(port), reuse_address=True)
    print(f"delay_proxy: {args.listen} -> {args.target}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay for any source")
    parser.add_argument("--source-delay", action="append", default=[], metavar="IP=MS",
                        help="one-way delay for connections from IP")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
