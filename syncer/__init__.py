"""The ConfigMap syncer process: the only importer of kubernetes."""
