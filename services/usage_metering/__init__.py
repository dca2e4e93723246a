"""Usage metering: calling credits against the monthly cap, threshold alerts, blocking, cap changes."""
