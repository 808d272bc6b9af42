"""Help texts every command that takes the option shares: each option is described one way everywhere."""

STORE_HELP = "registry/run store (default: MAAS_STORE, else the nearest .maas folder here or above)"
# two kinds of address: where this process joins Ray (run, serve, data schema) and a cluster's Jobs API
RAY_HELP = ("Ray cluster to run on, as ray.init takes it: ray://<head>:10001 or auto (default: RAY_ADDRESS; "
            "none: an embedded local Ray for this command)")
JOBS_HELP = ("the cluster's Jobs API: its dashboard, http://<head>:8265 (default: RAY_ADDRESS; none: an embedded "
             "local Ray that lives as long as this command)")
JOBS_ONLY_HELP = "the cluster's Jobs API: its dashboard, http://<head>:8265 (default: RAY_ADDRESS)"
EVAL_JOB_HELP = ("the cluster's Jobs API: its dashboard, http://<head>:8265, to score the versions in an eval job "
                 "there (default: RAY_ADDRESS; none: lm-eval in this process, no Ray)")
INSECURE_HELP = ("send the Ray auth token over plain http:// to a non-local address (refused by default: use "
                 "https://, or forward the dashboard port and use http://127.0.0.1:8265)")
