"""The kioskfleet central server: MQTT ingest, fleet state, REST API, metrics, scheduler."""
