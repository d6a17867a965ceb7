"""The edge: where a request enters (the RunPod worker, the command line) and becomes a typed job."""
