# Sourced, not run: the one-server fleet of an idle agent (no instance), as measured by
# bench/agent-overhead/run.sh and as recorded by scripts/build-agent.sh --record-order, so the
# code order is recorded on the run that is measured.
#
#   idle_agent_files DIR PORT INTERVAL   # writes DIR/agent.token (0600) and DIR/rejuv.toml:
#                                        # server s1, agent on 127.0.0.1:PORT, readings every INTERVAL

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

idle_agent_files() {
    local dir="$1" port="$2" interval="$3"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/agent.token"
    chmod 600 "$dir/agent.token"
    cat > "$dir/rejuv.toml" <<TOML
[cluster]
name = "agent-overhead"
mode = "active-standby"

[auth]
agent_token_file = "$dir/agent.token"

[agent]
sample_interval = "$interval"

[traffic]
adapter = "haproxy"

[traffic.haproxy]
socket = "unix:$dir/haproxy.sock"
backends = { idle = "be_idle" }

[services.idle]
command = "/bin/true"
health = { path = "/healthz", interval = "2s", timeout = "1s" }

[[servers]]
id = "s1"
address = "127.0.0.1"
agent = "127.0.0.1:$port"
role = "primary"
capacity = 1
port_range = [$((port + 1)), $((port + 1))]
instances = []
data_dir = "$dir/agent-data"
TOML
}
