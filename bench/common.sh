# Shell helpers shared by the benchmark scripts (sourced; needs $PYTHON).

# A port free for both UDP and TCP on 127.0.0.1.
free_port() {
    "$PYTHON" - <<'PY'
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close()
        u.close()
    print(port)
    break
PY
}
