"""Plumbing every stage uses: errors, atomic files, logs, resume pieces, keyed inputs, the column registry.

Nothing here imports torch or any other part of the package.
"""
