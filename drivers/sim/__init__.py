"""Simulated plant: real mass, served as Modbus slaves."""
