"""Domain adapters, installed as ``nftkit.adapters``. Each submodule registers one Adapter subclass."""
