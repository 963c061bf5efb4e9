"""The built-in default job: shows what the sandbox looks like from inside."""

import os
import socket
import sys

print(f"hello from {socket.gethostname()} as uid {os.getuid()}, python {sys.version.split()[0]}")
print(f"pid {os.getpid()}, processes visible: {sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}")
print(f"network interfaces: {[name for _, name in socket.if_nameindex()]}")
try:
    open("/etc/kakoi-test", "w")
except OSError as e:
    print(f"writing outside /tmp and /work: {e.strerror}")
