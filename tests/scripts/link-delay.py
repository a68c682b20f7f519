#!/usr/bin/env python3
"""The delay half of `link.sh`: a point-to-point link between this network
namespace and another one, made of two TUN devices, that holds every packet
for DELAY before handing it to the other side (each direction, so the round
trip is twice DELAY).

Why not netem: this kernel is built without it (CONFIG_NET_SCH_NETEM unset,
nor fq, which honours BPF-set departure times), so no qdisc can delay. The
rate is still shaped by the kernel: link.sh puts a tbf qdisc on both TUN
devices, whose egress is what this program reads. Packets are forwarded
whole and unchanged (layer 3), so TCP runs end to end as over a wire.

  link-delay.py NETNS_PATH DELAY_MS HOST_DEV PEER_DEV READY_FILE

Creates HOST_DEV here and PEER_DEV in NETNS_PATH (they exist while this
program runs and vanish when it exits), writes READY_FILE, then forwards
until SIGTERM.
"""
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def main():
    netns, delay_ms, host_dev, peer_dev, ready = sys.argv[1:6]
    delay = float(delay_ms) / 1000.0
    host = tun(host_dev)
    # A TUN device stays in the namespace it was created in: enter the peer's
    # to create the other end, keeping both file descriptors.
    libc = ctypes.CDLL(None, use_errno=True)
    ns_fd = os.open(netns, os.O_RDONLY)
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"link-delay: setns {netns}: {os.strerror(ctypes.get_errno())}")
    os.close(ns_fd)
    peer = tun(peer_dev)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(ready, "w") as f:
        f.write(f"{os.getpid()}\n")

    other = {host: peer, peer: host}
    # Packets due to be written to each device, oldest first: a constant delay
    # keeps each queue in order.
    due = {host: collections.deque(), peer: collections.deque()}
    while True:
        heads = [q[0][0] for q in due.values() if q]
        timeout = max(0.0, min(heads) - time.monotonic()) if heads else None
        readable, _, _ = select.select([host, peer], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                due[other[fd]].append((now + delay, packet))
        now = time.monotonic()
        for fd, queue in due.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except OSError:
                    pass  # a device that is going down: the packet is lost, as on a wire


if __name__ == "__main__":
    main()
