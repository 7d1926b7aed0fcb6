"""embedserve: the command line (`embedserve ...`) and the demo that ties the layers together."""
