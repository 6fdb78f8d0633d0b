"""Samples to kilograms: stream totals (streams.py) and inventory masses (inventories.py).

The arithmetic runs in the numba kernels (kernels.py, each with a plain-Python twin in
reference.py); the density at line conditions comes from conditions.py and the models in
density.py; hourly.py keeps the hour's quantities a flow computer reports.
"""
