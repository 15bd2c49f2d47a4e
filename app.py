from coupon import create_app

app = create_app()
