"""Data: annotations in, a validated, versioned VeRL training set out.

The modules, one concept each: :mod:`schema` (the canonical record), :mod:`readers`
(one reader per input format), :mod:`images` (safe image resolution and decoding),
:mod:`validation` (the Great Expectations suite), :mod:`split` (leakage-safe split),
:mod:`vision` (the resized size the model sees), :mod:`export` (VeRL parquet),
:mod:`manifest` (versions, atomic publish, verified download), :mod:`prepare`
(orchestration), :mod:`synthetic` (a small real-image demo set) and :mod:`cli`.
"""
