"""The model core: the manifest and its loader, the runtimes, the numpy maths, the engine, input parsing,
images and bulk scoring. No torch (TorchScript is imported lazily, by its runtime only) and no HTTP."""
