"""The controller's own Prometheus metrics (its registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RELOAD_RESULTS = ("success", "nginx_test_failed", "reload_failed", "write_failed")


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.weight = Gauge("fleet_controller_replica_weight",
                            "nginx weight the gateway runs with, per replica (1-100).",
                            ["replica"], registry=reg)
        self.desired_weight = Gauge("fleet_controller_desired_weight",
                                    "Weight the policy wants for the replica now; it differs "
                                    "from the running weight while a change is held back.",
                                    ["replica"], registry=reg)
        self.change_pending = Gauge("fleet_controller_change_pending",
                                    "1 while the controller has a configuration to apply "
                                    "whose reload failed, else 0.", registry=reg)
        self.in_rotation = Gauge("fleet_controller_replica_in_rotation",
                                 "1 while the replica is in the gateway's rotation, else 0.",
                                 ["replica"], registry=reg)
        self.healthy = Gauge("fleet_controller_replica_healthy",
                             "1 while the controller's own health probes pass, else 0.",
                             ["replica"], registry=reg)
        self.signal_age = Gauge("fleet_controller_signal_age_seconds",
                                "Age of the replica's newest Prometheus sample, in seconds "
                                "(+Inf when there is none).", ["replica"], registry=reg)
        self.override = Gauge("fleet_controller_override",
                              "1 while an admin override is active, by kind (drain, pin).",
                              ["replica", "kind"], registry=reg)
        self.reloads = Counter("fleet_controller_reloads",
                               "nginx reloads attempted by the controller, by result.",
                               ["result"], registry=reg)
        self.decisions = Counter("fleet_controller_decisions",
                                 "Policy evaluations, by whether they were applied.",
                                 ["applied"], registry=reg)
        self.decision_seconds = Histogram(
            "fleet_controller_decision_duration_seconds",
            "Time to gather signals and compute one decision, in seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=reg)
        self.prometheus_up = Gauge("fleet_controller_prometheus_up",
                                   "1 when the last Prometheus query succeeded, else 0.",
                                   registry=reg)
        self.last_reload = Gauge("fleet_controller_last_successful_reload_timestamp_seconds",
                                 "Unix time of the last successful reload.", registry=reg)
        self.warming = Gauge("fleet_controller_replica_warming",
                             "1 while the replica takes its warm-up burst before it joins "
                             "rotation, else 0.", ["replica"], registry=reg)
        self.warmup_seconds = Gauge("fleet_controller_warmup_duration_seconds",
                                    "How long the replica's last warm-up burst took, in "
                                    "seconds.", ["replica"], registry=reg)
        self.pace_ratio = Gauge("fleet_controller_pace_ratio",
                                "The pace test's verdict: the replica's seconds per output "
                                "token at equal batch over the fleet's, as last moved by an "
                                "alarm of the test (1 = even).",
                                ["replica"], registry=reg)
        self.pace_seconds = Gauge("fleet_controller_pace_seconds_per_token",
                                  "Seconds per output token of the replica's latest pace "
                                  "probe.", ["replica"], registry=reg)
        self.pace_failures = Counter("fleet_controller_pace_probe_failures",
                                     "Pace probes that failed or streamed too little to time.",
                                     ["replica"], registry=reg)
        self.process_starts = Counter("fleet_controller_replica_process_starts",
                                      "Starts of the replica's process by supervisord that "
                                      "the controller saw; several in minutes is a crash "
                                      "loop.", ["replica"], registry=reg)
        self.gave_up = Gauge("fleet_controller_replica_process_fatal",
                             "1 while supervisord has given up on the replica's process "
                             "(FATAL: it kept dying as it started), else 0.",
                             ["replica"], registry=reg)
        self.shedding = Gauge("fleet_controller_replica_shedding",
                              "1 while the replica's keyed requests spill to least_conn "
                              "(gateway.affinity's load bound: its pressure is well above the "
                              "fleet's median).",
                              ["replica"], registry=reg)
        self.class_shed = Gauge("fleet_controller_class_shed",
                                "1 while the gateway sheds the priority class for the "
                                "fleet's queue wait (priority.shed_queue_wait_s), else 0.",
                                ["priority_class"], registry=reg)
        self.queue_wait = Gauge("fleet_controller_queue_wait_seconds",
                                "Requests waiting in the replicas in rotation over the rate "
                                "they finish: how long a new request waits to start, about.",
                                registry=reg)
        self.fair_share = Gauge("fleet_controller_fair_share_per_key",
                                "Requests each API key may hold in flight while the fleet is "
                                "saturated (priority.fair_share); 0: no cap.",
                                registry=reg)
        self.key_tokens = Gauge("fleet_controller_key_tokens",
                                "Tokens of the API key's answers over the budget window "
                                "(budgets), as the ledger counts them.",
                                ["key"], registry=reg)
        self.key_over_budget = Gauge("fleet_controller_key_over_budget",
                                     "1 while the gateway answers the API key 429 for its "
                                     "token budget (budgets), else 0.",
                                     ["key"], registry=reg)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)
        for applied in ("true", "false"):
            self.decisions.labels(applied=applied)
