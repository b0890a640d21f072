"""The kioskfleet terminal agent: probes peripherals and reports them over MQTT.

It must never act on a message it cannot verify, and never block the kiosk
application.
"""
