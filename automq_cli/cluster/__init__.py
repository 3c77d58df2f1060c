"""`amq cluster`: a local cluster of SeaweedFS, one controller and brokers in zones.

    state.py      the state file (cluster.json), its one reader and writer
    processes.py  spawn, liveness, stop by pid, port checks, the ApiVersions probe
    launch.py     ClusterOptions, start_cluster, start_broker(s), stop_cluster, broker configs
    status.py     the controller's view combined with the local processes
    commands.py   the Typer commands (up, down, status)
"""

from automq_cli.cluster.commands import app
from automq_cli.cluster.launch import (
    NOT_RUNNING,
    ClusterError,
    ClusterOptions,
    broker_config,
    check_not_running,
    parse_zones,
    plan,
    start_broker,
    start_brokers,
    start_cluster,
    stop_cluster,
)
from automq_cli.cluster.processes import api_versions_ok, kill_pid, pid_alive, port_free, stop_pid, terminate_pid
from automq_cli.cluster.state import amq_home, find_state, read_state, remove_state, write_state
from automq_cli.cluster.status import cluster_status

__all__ = [
    "NOT_RUNNING",
    "ClusterError",
    "ClusterOptions",
    "amq_home",
    "api_versions_ok",
    "app",
    "broker_config",
    "check_not_running",
    "cluster_status",
    "find_state",
    "kill_pid",
    "parse_zones",
    "pid_alive",
    "plan",
    "port_free",
    "read_state",
    "remove_state",
    "start_broker",
    "start_brokers",
    "start_cluster",
    "stop_cluster",
    "stop_pid",
    "terminate_pid",
    "write_state",
]
