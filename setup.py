"""Build script: the package is pure Python plus one Cython extension (added with the Cython backend)."""

from setuptools import setup

setup()
