"""Integrations with other libraries; each submodule imports its library only when used.

* :mod:`dropkit.integrations.transformers`: ``register()`` makes ``attn_implementation="dropkit"``
  run Hugging Face models' attention through
  :func:`dropkit.functional.scaled_dot_product_attention`.
"""
