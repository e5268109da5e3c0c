"""Client helpers; they talk to Krishiv through the Flight SQL protocol only."""
