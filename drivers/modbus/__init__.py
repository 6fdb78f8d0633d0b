"""Modbus drivers: TCP today; RTU over RS-485 follows (issue 3)."""
