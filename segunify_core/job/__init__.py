"""The raster job: plan, tile, run parts (in process or on Dask), blend and assemble."""
