#!/usr/bin/env bash
# Start Prometheus (Debian's `prometheus` package: apt-get install prometheus) scraping every node
# of a Ray cluster through the service-discovery file Ray keeps up to date in its temp directory.
#
#   cluster/prometheus.sh [RAY_TEMP_DIR] [LISTEN_ADDRESS] [DATA_DIR] [SCRAPE_INTERVAL]
#   defaults:              /tmp/ray       127.0.0.1:9090   ./prometheus-data  5s
#
# Runs in the foreground; its HTTP API (PromQL) is at http://LISTEN_ADDRESS/api/v1/query, the
# alerting rules of cluster/prometheus/alerts.yaml at http://LISTEN_ADDRESS/alerts (no Alertmanager).
set -euo pipefail
ray_temp_dir="${1:-/tmp/ray}"
listen="${2:-127.0.0.1:9090}"
data_dir="${3:-./prometheus-data}"
interval="${4:-5s}"
rules="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/prometheus/alerts.yaml"
mkdir -p "$data_dir"
cat > "$data_dir/prometheus.yml" <<CONFIG
global:
  scrape_interval: $interval
  evaluation_interval: $interval
rule_files: ["$rules"]
scrape_configs:
  - job_name: ray
    file_sd_configs:
      - files: ["$ray_temp_dir/prom_metrics_service_discovery.json"]
        refresh_interval: $interval
CONFIG
exec prometheus --config.file="$data_dir/prometheus.yml" --storage.tsdb.path="$data_dir/tsdb" \
  --web.listen-address="$listen" --log.level=warn
