"""The VoiceMesh gateway: routing, sessions and (later) failover, auth and admin."""
